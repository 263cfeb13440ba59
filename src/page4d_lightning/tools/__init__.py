"""The `page4d` tool commands, one module per command (`page4d_lightning.cli.TOOLS` maps names to them): `data`
(validate, inspect), `pack`, `export_weights`, `analyze_layers`. The only library code that imports `datamodules`."""
