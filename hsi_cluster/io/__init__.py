"""Everything that touches files: scene readers, the Zarr working store, raster writers."""

from hsi_cluster.io.ingest import ingest
from hsi_cluster.io.scene import open_scene
from hsi_cluster.io.store import Store, is_complete_store, is_store, open_store, open_valid_mask

__all__ = ["Store", "ingest", "is_complete_store", "is_store", "open_scene", "open_store", "open_valid_mask"]
