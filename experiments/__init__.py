"""One module per scientific claim: a config dataclass, ``run(cfg) -> xarray.Dataset`` and
``plot(ds, outdir)``. Run one with ``python -m experiments.<name>``."""
