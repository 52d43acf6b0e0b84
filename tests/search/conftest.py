"""Search settings for trials that train in a second on the CPU (see `tiny_data`)."""

TINY = {"family": "convmixer", "overrides": {"h": "16..48:16", "d": "1..2", "p": "4",
                                             "k": "3"},
        "epochs": 2, "val_size": 40, "recipe": {"batch_size": 32}}
