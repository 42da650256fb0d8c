"""Framework-free core of fedxrec: config, data, splits, model, metrics, parameter I/O."""
