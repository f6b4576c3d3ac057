"""Mixture of experts: router and inference engine (arrive with the MoE issue)."""
