# The second H100 batch (rot-flip8 12 epochs, rot4 24 epochs; four lanes of five classes at once).
# .gpu/setup.sh unpacks the CUDA build of xtask (see docs/cuda.md); .gpu/fmnist holds the full Fashion-MNIST IDX files.
source .gpu/setup.sh
export SELFSUP_DATA_DIR=$PWD/data SELFSUP_FASHION_MNIST_FULL=$PWD/.gpu/fmnist
nvidia-smi -L
A="--transforms rot-flip8 --epochs 12 --batch 1024 --eval-batch 8192 --seeds 0"
B="--transforms rot4 --epochs 24 --batch 1024 --eval-batch 8192 --seeds 0"
timeout 540 bash docs/results/anomaly-fashion-mnist-full-h100/run-classes.sh "0 1 2 3 4" rf8a $A &
timeout 540 bash docs/results/anomaly-fashion-mnist-full-h100/run-classes.sh "5 6 7 8 9" rf8b $A &
timeout 540 bash docs/results/anomaly-fashion-mnist-full-h100/run-classes.sh "0 1 2 3 4" r4a $B &
timeout 540 bash docs/results/anomaly-fashion-mnist-full-h100/run-classes.sh "5 6 7 8 9" r4b $B &
wait
cd $OUT && tar czf results.tgz --exclude='*.png' --exclude='*.safetensors' rf8a rf8b r4a r4b && rm -rf rf8a rf8b r4a r4b && ls -la
