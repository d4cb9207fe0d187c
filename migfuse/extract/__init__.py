"""Stage 1: frozen backbones turn clips into token tensors written to the cache (needs torch, torchvision, timm, av)."""
