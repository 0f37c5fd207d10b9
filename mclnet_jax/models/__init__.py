"""Flax (linen) models: ResNet backbones, the two-stream MCLNet, the MCM."""
