# The spendwatch image: workers and the dashboard (docker-compose.yml). .dockerignore keeps the build
# context to the sources: no .venv, .git, tests, caches or secrets.
FROM python:3.11-slim
WORKDIR /app
COPY . .
# aiokafka[snappy,lz4,zstd] comes with the project's dependencies: librdkafka producers (Go, Node, kcat,
# the OTel Collector) compress, and a worker without a codec could not read their records. Fail the
# build, not the worker, if one is missing.
RUN pip install --no-cache-dir . \
 && python -c "from aiokafka.codec import has_gzip, has_lz4, has_snappy, has_zstd; \
assert has_gzip() and has_snappy() and has_lz4() and has_zstd(), 'aiokafka compression codecs missing'"
RUN mkdir /data
ENTRYPOINT []
