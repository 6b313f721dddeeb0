"""Online serving on Ray Serve: one frozen backbone per replica, many registered adapter sets.

- :mod:`~pipelines.serving.settings`: :class:`ServeConfig` (validated) and the served references;
- :mod:`~pipelines.serving.pool`: loaded models whose identical frozen tensors are one copy;
- :mod:`~pipelines.serving.footprint`: what sharing saves, in a replica and on the meta device;
- :mod:`~pipelines.serving.inputs`: an upload or an allowed URI to test views, within limits;
- :mod:`~pipelines.serving.watcher`: aliases followed in the registry, versions swapped live;
- :mod:`~pipelines.serving.deployment`: the Serve replica and its HTTP routes;
- :mod:`~pipelines.serving.loopback`: a private cluster's replicas kept on 127.0.0.1;
- :mod:`~pipelines.serving.launch`: ``aim-video serve`` on the driver.
"""
