#!/usr/bin/env python3
# Ray Train driver for llmwizard run 'Llama-3.1-8B-Instruct-arithmetic': fsdp, 16 worker(s) (one GPU each).
# Needs: the storage path /mnt/cluster_storage/llmwizard on storage every node shares (or --storage-path s3://...,
# a shared NFS path); llmwizard installed on every node (pip install llmwizard 'ray[train]').
# Submit from this directory: ray job submit --working-dir . -- python ray_train.py   (docs/ray.md)
# On this machine alone: python ray_train.py --local-cpus 2. Extra arguments reach TRL (--max_steps 100).
import sys
from pathlib import Path

from llmwizard.runner.export.targets.ray_worker import main

SETTINGS = {'name': 'Llama-3.1-8B-Instruct-arithmetic',
 'num_workers': 16,
 'use_gpu': True,
 'resources_per_worker': {'GPU': 1},
 'storage_path': '/mnt/cluster_storage/llmwizard'}

if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parent, SETTINGS, sys.argv[1:]))
