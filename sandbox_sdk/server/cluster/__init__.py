"""A local cluster for development and tests: throwaway PostgreSQL and Redis, and
gateways and orchestrators as processes on loopback (``sandbox-cluster up``)."""

from sandbox_sdk.server.cluster.local_cluster import ClusterError, LocalCluster, ServerProcess

__all__ = ["ClusterError", "LocalCluster", "ServerProcess"]
