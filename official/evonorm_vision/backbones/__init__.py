"""Backbones whose every norm site is chosen through the evonorm_layers registry."""
