"""Tests of hsi_cluster.io."""
