"""Studies: a grid of ordinary jobs (one per cell and seed) and the table comparing them.

``grid`` expands a grid into cells and each job's overrides, ``table`` computes the table and
the verdict from the jobs' results (pure), ``results`` reads those results from the store,
``plot`` draws AP against gamma, ``local`` runs a study on this machine (``retinanet study``).
"""
