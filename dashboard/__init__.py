"""The Dash app (built in a later issue); reads runs through gpulens.profiler only."""
