"""Ray's fake multinode node provider with one change: each node gets a runtime-env dir of its own.

The fake provider (``ray.autoscaler._private.fake_multi_node``) starts every worker node as real
raylets in the head's session dir. A job's ``working_dir`` is extracted into
``<session>/runtime_resources/`` by each node's agent, and an agent that sees a package for the first
time deletes and re-extracts it: on a node that was just added, that pulls the directory away from
under the job's driver on the head (``FileNotFoundError`` from ``os.getcwd()``). Real nodes each have
their own disk; here each gets its own ``runtime_resources_<n>`` dir, which is all that differs.

Loaded by the head's autoscaler as ``provider: {type: external, module: tests.fake_nodes.FakeNodes}``.
"""
from __future__ import annotations

import functools

import ray._private.parameter as parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class FakeNodes(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # under the provider's (re-entrant) lock: two launcher threads must not swap RayParams at once
        with self.lock:
            real = parameter.RayParams
            parameter.RayParams = functools.partial(
                real, runtime_env_dir_name=f"runtime_resources_{self._next_node_id + 1}")
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                parameter.RayParams = real
