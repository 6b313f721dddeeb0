"""Videos to clips on Ray Data: listing, scanning, decoding, stored shards, the demo data set."""
