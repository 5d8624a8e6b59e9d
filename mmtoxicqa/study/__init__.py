"""Studies over many runs: sweep cells, run records, rescoring, leaderboards, the organism report. Imports the layers below and the plug-in folders."""
