"""End-to-end recipes: the synthetic suite's pipeline (`make demo`) and its small stand-in backbone."""
