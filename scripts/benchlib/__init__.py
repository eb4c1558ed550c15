"""The pieces of scripts/bench.py: `measure` (our package's timings, the scratch `make submit`),
`twin` (the same networks in PyTorch), `profile` (per-step and cProfile breakdowns) and `report`
(the table, the targets, the JSON line). torch is imported only by `twin`, only when asked."""
