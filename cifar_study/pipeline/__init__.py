"""Pipeline plumbing: params, paths, data sources, input rules, atomic outputs, checkpoints and resume."""
