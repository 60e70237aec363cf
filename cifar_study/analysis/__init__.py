"""Analysis of finished runs: flow health, training dynamics, the study's claims, figures."""
