"""Components of the sdk-worker image (deploy/docker/sdk-worker.Dockerfile):
replace them with yours. They register on the SDK's own `server`; its
`main` runs the transport that STEPFLOW_TRANSPORT names (nats in
deploy/k8s/components/sdk-nats), so this file runs unmodified under
stepflow-py 0.13's NATS worker. Routed as /python/<name> by the stepflow
workers' config."""

from stepflow_py.worker.main import main, server


@server.component
def shout(input: dict) -> dict:
    return {"text": str(input.get("text", "")).upper()}


if __name__ == "__main__":
    main()
