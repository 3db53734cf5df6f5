"""Latency-aware proxyless architecture search.

- :mod:`~strkit.nas.space`: the :class:`~strkit.nas.space.SearchSpace` base class (a new space is one subclass);
- :mod:`~strkit.nas.search_space`: the MobileNetV2 supernet (``supernet`` backbone), one such space;
- :mod:`~strkit.nas.proxyless`: mixed edges, binary gates, α gradients, path sampling;
- :mod:`~strkit.nas.latency`: the latency lookup table (``table``), expected cost and cost losses
  (``cost``), LUT validation (``validation``);
- :mod:`~strkit.nas.arch`: derive / save / load architecture files (built by the ``searched`` backbone);
- :mod:`~strkit.nas.report`: probability tables, heat-map, search report;
- :mod:`~strkit.nas.config`: the ``search`` config section.

The search over data is a run on the run loop: :mod:`strkit.engine.searcher`. Importing this package is cheap.
"""
