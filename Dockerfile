# One image per program, FROM scratch: a static (musl) program, a passwd entry for its non-root
# user (65532), CA roots for ACME, and the directories it writes. No shell, no package manager.
#
# The programs come from dist/build.sh (target/dist/stage/TRIPLE/bin); no image registry is
# needed, so this builds offline:
#   dist/build.sh && docker build --target edge -t kokoa-edge .   (also origin, control)
# or `docker compose up --build` (compose.yaml) for the whole demo.
ARG TRIPLE=x86_64-unknown-linux-musl

# Stage 1: everything the images share, gathered from the build context.
FROM scratch AS files
ARG TRIPLE
COPY dist/docker/passwd dist/docker/group /etc/
# The build host's CA roots (staged by dist/build.sh), for control's ACME client.
COPY target/dist/stage/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY target/dist/stage/${TRIPLE}/bin/ /usr/bin/
# Empty directories owned by the service user (volumes mounted there inherit the owner).
COPY --chown=65532:65532 dist/docker/empty/ /var/lib/kokoa-edge/
COPY --chown=65532:65532 dist/docker/empty/ /var/lib/kokoa-origin/
COPY --chown=65532:65532 dist/docker/empty/ /var/lib/kokoa-dev/
COPY --chown=65532:65532 dist/docker/empty/ /var/lib/kokoa-control/
COPY --chown=65532:65532 dist/docker/empty/ /bundles/

FROM scratch AS edge
COPY --from=files /etc/passwd /etc/group /etc/
COPY --from=files /usr/bin/kokoa-edge /usr/bin/kokoa-edge
COPY --from=files --chown=65532:65532 /var/lib/kokoa-edge /var/lib/kokoa-edge
USER 65532:65532
EXPOSE 443 80 51820/udp
ENTRYPOINT ["/usr/bin/kokoa-edge"]
CMD ["--config", "/etc/kokoa/edge/edge.toml"]

FROM scratch AS origin
COPY --from=files /etc/passwd /etc/group /etc/
COPY --from=files /usr/bin/kokoa-origin /usr/bin/kokoa-origin
COPY --from=files --chown=65532:65532 /var/lib/kokoa-origin /var/lib/kokoa-origin
USER 65532:65532
ENTRYPOINT ["/usr/bin/kokoa-origin"]
CMD ["--config", "/etc/kokoa/origin/origin.toml"]

FROM scratch AS control
COPY --from=files /etc/passwd /etc/group /etc/
COPY --from=files /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=files /usr/bin/kokoa-control /usr/bin/kokoa-control
COPY --from=files --chown=65532:65532 /var/lib/kokoa-dev /var/lib/kokoa-dev
COPY --from=files --chown=65532:65532 /var/lib/kokoa-control /var/lib/kokoa-control
COPY --from=files --chown=65532:65532 /bundles /bundles
USER 65532:65532
EXPOSE 7080 7443
ENTRYPOINT ["/usr/bin/kokoa-control"]
CMD ["serve", "--data-dir", "/var/lib/kokoa-control", "--api", "0.0.0.0:7080"]
