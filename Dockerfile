# AnyV2V web app on an NVIDIA GPU.
#
#   docker build -t anyv2v .
#   docker run --gpus all -p 7860:7860 -v anyv2v-cache:/home/anyv2v/.cache anyv2v
#
# then open http://localhost:7860 (add -e ANYV2V_AUTH=user:password when others can reach it). Models download
# from the Hugging Face hub on first use into the cache volume (I2VGen-XL fp16 is about 4.6 GB); pass -e ANYV2V_PRELOAD=1 to load the video model before serving, or
# -e ANYV2V_MODEL=/models/i2vgen-xl with -v /path/on/host:/models:ro to use local folders offline.
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python only: PyAV's wheel bundles FFmpeg (H.264), torch's wheel bundles the CUDA libraries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Dependencies first, so code changes do not reinstall them. On Linux, pip picks torch's CUDA build.
COPY requirements.txt /app/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -r /app/requirements.txt
ENV PATH=/opt/venv/bin:$PATH
# rembg's first import compiles pymatting's numba code (minutes on a small CPU); do it once here, as root, so the
# compiled cache lands in the image where the non-root user can read it.
RUN python -c "import rembg"

# A non-root user (uid 1000, as Hugging Face Docker Spaces expect); the code stays root-owned and read-only.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --create-home --uid 1000 --shell /bin/bash anyv2v
COPY app.py /app/app.py
COPY anyv2v /app/anyv2v
COPY server /app/server
COPY ui /app/ui
COPY editors /app/editors
COPY assets /app/assets

USER anyv2v
WORKDIR /home/anyv2v
ENV HOME=/home/anyv2v \
    HF_HOME=/home/anyv2v/.cache/huggingface \
    ANYV2V_CACHE_DIR=/home/anyv2v/.cache/anyv2v/inversions \
    ANYV2V_OUTPUT_DIR=/home/anyv2v/outputs \
    GRADIO_ANALYTICS_ENABLED=False \
    TRANSFORMERS_VERBOSITY=error \
    DIFFUSERS_VERBOSITY=error
RUN mkdir -p /home/anyv2v/.cache /home/anyv2v/outputs

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/gradio_api/info', timeout=4)"
# In a container the app must listen on all interfaces; outside one it defaults to 127.0.0.1.
CMD ["python", "/app/app.py", "--host", "0.0.0.0", "--port", "7860"]
