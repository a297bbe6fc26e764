"""Train your own nn.Sequential with Decoupled Greedy Learning (3 stages) on Fashion-MNIST.

python examples/own_sequential.py [--epochs 1] [--train-size N]
"""

import argparse

import torch
from torch import nn

import degl
from degl.data import DeviceLoader, load_dataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--train-size", type=int, default=None)
args = parser.parse_args()

data = load_dataset("fashion-mnist").subset(args.train_size)
train = DeviceLoader(data, train=True, batch_size=128)
test = DeviceLoader(data, train=False, batch_size=1000)

# --- the ~10 lines of the README ---
net = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1),
    nn.BatchNorm2d(32),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1),
    nn.BatchNorm2d(64),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(64, 128, 3, padding=1),
    nn.BatchNorm2d(128),
    nn.ReLU(),
)
stages = degl.build_stages(net, num_stages=3, aux="mlp", input_shape=(1, 28, 28), num_classes=10)
dgl = degl.DGL(stages, make_optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9))
for epoch in range(args.epochs):
    for x, y in train.epoch(epoch):
        dgl.train_step(x, y)  # every stage: forward, local loss, backward, step; output passed on detached
print("test accuracy per stage:", degl.evaluate(stages, test).acc)
