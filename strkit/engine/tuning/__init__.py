"""Training-protocol search on Optuna: a base config + a YAML search space, short proxy trials with pruning.

A *search space* file (``configs/tune/*.yaml``)::

    base: ../train/default_model.yaml     # the training config searched around (relative to this file)
    overrides: [data.workers=1]           # fixed settings, part of every protocol (and of best.yaml)
    proxy: [train.val_every=100]          # settings of the proxy trials only (not part of the protocol)
    space:
      train.optimizer.lr: {type: logfloat, low: 3.0e-4, high: 1.0e-2}
      train.batch_size: {type: categorical, choices: [16, 32, 64]}
      data.augment: {type: categorical, choices: [none, light, strong, randaug]}
      data.augment_options.m: {type: int, low: 1, high: 10, when: {data.augment: randaug}}
      curriculum_step: {type: int, low: 300, high: 1200, step: 100,
                        keys: [data.train.synth_clean.ratio_schedule.0.0, ...]}

Each entry of ``space`` is one Optuna parameter (``categorical``, ``int``, ``float`` or ``logfloat``) named by
its key; it sets the config key of that name, or every key of ``keys`` (tied settings). Keys are dotted config
keys; inside a list a part is an index or the ``name`` of a data source (``data.train.IC15_train.ratio``).
``when: {other: value or [values]}`` makes a parameter conditional on an earlier one. Every key is checked
against the config schema and every value (each choice, both ends of each range) against its type and range
before a trial runs; so is the benchmark guard: no benchmark test set may be training or validation data, in
the base config or in any choice of the space.

A *trial* trains the base config with the trial's protocol (the fixed overrides and the suggested values)
and the proxy settings, for a short budget (``train.max_minutes`` or ``train.steps``), optionally on a
subset of each training source (``data.train_subset``), in ``<out>/trials/<number>``. Its objective is the
best validation accuracy it saw (validation = the held-out part of the *training* data); each validation is
reported to the pruner through the trainer's ``on_validation`` observer (the resource is the training step
for step budgets, the elapsed second for time budgets), and a losing trial stops there.

The study lives in an Optuna RDB storage (SQLite in ``<out>/study.db`` by default, PostgreSQL or any other
RDB URL for many machines); trials of killed processes are failed by heartbeat and retried once, and
running the same command again continues until the requested number of finished trials.
:func:`.study_report.write_report` writes the ready-to-run protocols, the trials table, parameter
importances and the optimisation history; :func:`.study_report.fidelity_check` retrains chosen protocols at
a multiple of the proxy budget and gives the rank correlation of proxy and long scores.

Optuna is an optional dependency (``pip install 'strkit[tune]'``), imported only when a study runs.

Modules: :mod:`~strkit.engine.tuning.protocol_space` (keys, parameters, checks), :mod:`~strkit.engine.tuning.trials`
(samplers, pruners, storage, trials, workers), :mod:`~strkit.engine.tuning.study_report` (report, fidelity).
Importing this package does no work.
"""
