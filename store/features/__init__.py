"""The feature store: frozen-FAN features per frame in one Zarr v3 group (layout in
`store.features.layout`), its reader (`store.features.reader`) and the checks that a store is the
one a config asks for, complete and undamaged (`store.features.checks`)."""
from store.features.checks import (CODE_ENTRY, checked, complete_with, damage_summary,
                                   expected_keys, shard_keys, store_key, verify)
from store.features.layout import (CODECS, FEATURE_CHANNELS, FEATURE_SIZE, KEY_BYTES, REQUIRED,
                                   create_feature_store, damaged_shards, done_shards,
                                   is_complete_layout, mark_done, n_shards_for, shard_range,
                                   write_shard)
from store.features.reader import DASK_FRAMES, FeatureStore

__all__ = ["CODE_ENTRY", "CODECS", "DASK_FRAMES", "FEATURE_CHANNELS", "FEATURE_SIZE", "KEY_BYTES",
           "REQUIRED", "FeatureStore", "checked", "complete_with", "create_feature_store",
           "damage_summary", "damaged_shards", "done_shards", "expected_keys",
           "is_complete_layout", "mark_done", "n_shards_for", "shard_keys", "shard_range",
           "store_key", "verify", "write_shard"]
