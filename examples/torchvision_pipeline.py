"""A torchvision ResNet-18 split in two stages, trained by two processes at once, from Python.

    python examples/torchvision_pipeline.py [--train-size N] [--epochs E] [--test-batches B]

Each process builds the same network (same seed), degl cuts it in two by tracing its forward, and
process k trains stage k: process 0 reads Fashion-MNIST and sends its stage's output to process 1,
one batch ahead, with no backward pass between them (Decoupled Greedy Learning).
"""

import argparse
import itertools

import torch
import torchvision
from torch import nn

import degl
from degl.data import load_dataset


def resnet18_for_fashion_mnist() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)  # 1x28x28 images: a 3x3 stem, stride 1
    return model


def train(env: degl.DistEnv, train_size: int, epochs: int, test_batches: int) -> list[float] | None:
    torch.manual_seed(0)  # every process builds the same weights
    stages = degl.build_stages(
        resnet18_for_fashion_mnist(), num_stages=env.world_size, aux="mlp", input_shape=(1, 28, 28), num_classes=10
    )
    train_batches = test = None
    if env.rank == 0:  # only the first process reads the data
        data = load_dataset("fashion-mnist").subset(train_size)
        train_batches, test_loader = data.loaders(
            batch_size=64, eval_batch_size=250, device=env.device, augment=False, seed=0
        )
        test = list(itertools.islice(test_loader, test_batches))
    result = degl.train_stage(
        env,
        stages,
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
        train_batches=train_batches,
        test_batches=test,
        epochs=epochs,
    )
    return result.test_acc()  # per stage, on process 0 (None on the others)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-size", type=int, default=6400)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--test-batches", type=int, default=4, help="test batches of 250 (default: 4)")
    args = parser.parse_args()
    accs = degl.launch(train, nprocs=2, args=(args.train_size, args.epochs, args.test_batches))[0]
    print("test accuracy per stage:", accs)
