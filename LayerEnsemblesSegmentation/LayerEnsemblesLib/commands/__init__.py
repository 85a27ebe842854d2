"""Sub-commands of ``layer-ensembles``: each module has ``add_parser(subparsers)`` and ``run(args)``."""
