"""Independent units of work (train or score a module, a study cell, a composition for one task),
run in this process or on a Ray cluster.

- :mod:`~composer.scaleout.units`: the unit protocol, the in-process runner, :func:`run_units`
  (progress, resuming, failures, the driver's writes);
- :mod:`~composer.scaleout.summary`: where the time of a run went;
- :mod:`~composer.scaleout.folders`: adapter folders as bytes, written back atomically;
- :mod:`~composer.scaleout.ray_runner`: one actor per worker on a Ray cluster (ray imported
  lazily, inside);
- :mod:`~composer.scaleout.library_jobs`: ``loradex library build`` and ``evaluate`` as units;
- :mod:`~composer.scaleout.batch_plan` and :mod:`~composer.scaleout.compose_jobs`:
  ``loradex compose-batch``.
"""
