# Streamlit grade viewer as a Hugging Face *Docker* Space (Spaces dropped the built-in Streamlit SDK in
# 2025). The Gradio workbench deploys without this file (README front matter, sdk: gradio).
# Spaces routes to port 7860 by default (app_port in the Space README); the command line is the same
# one tests/apps/test_streamlit_app.py starts.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user . .
EXPOSE 7860
CMD ["python", "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true", \
     "--server.address", "0.0.0.0", "--server.port", "7860"]
