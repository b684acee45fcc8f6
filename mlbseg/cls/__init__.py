"""Classification (L2B on CIFAR-10/100, Clothing1M, ISIC2019) on the shared meta engine."""
