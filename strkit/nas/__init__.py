"""Latency-aware proxyless architecture search.

- :mod:`~strkit.nas.search_space`: the MobileNetV2 supernet (``supernet`` backbone) of mixed cells;
- :mod:`~strkit.nas.proxyless`: mixed edges, binary gates, α gradients, path sampling;
- :mod:`~strkit.nas.latency`: the latency lookup table (``table``), expected cost and cost losses
  (``cost``), LUT validation (``validation``);
- :mod:`~strkit.nas.arch`: derive / save / load architecture files (built by the ``searched`` backbone);
- :mod:`~strkit.nas.report`: probability tables, heat-map, search report;
- :mod:`~strkit.nas.config`: the ``search`` config section.

The search loop over data lives in :mod:`strkit.engine.searcher`. Importing this package is cheap.
"""
