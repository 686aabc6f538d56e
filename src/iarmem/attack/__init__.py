"""The extraction attack of Kowalczuk et al. (2025): score, select, generate, decide."""
