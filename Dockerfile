# tunehub, CPU image: the hub with the embedded engine on the self-built demo model.
#   docker build -t tunehub .
#   docker run -p 7860:7860 -e TUNEHUB_ADMIN_PASSWORD=... -e TUNEHUB_API_KEY=... -v tunehub-data:/data tunehub
# Listening on 0.0.0.0 needs both secrets; without them `tunehub serve` refuses to start and says so.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

# CPU torch first, from PyTorch's CPU index: the default wheel would bring CUDA libraries (several GB)
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY serving ./serving
COPY feedback ./feedback
COPY training ./training
RUN pip install . && useradd --create-home --uid 1000 tunehub && mkdir /data && chown tunehub /data

USER tunehub
VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health')"
CMD ["tunehub", "serve", "--host", "0.0.0.0", "--port", "7860", "--data-dir", "/data"]
