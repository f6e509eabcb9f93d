"""``python -m detector.cli``: the ``retinanet`` command without the service's subcommands
(``torchrun ... -m detector.cli train`` runs this). The commands live in
:mod:`detector.commands`, which the package imports; a module the package imports cannot also
be the one ``-m`` runs (it would be executed twice).
"""

from detector.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
