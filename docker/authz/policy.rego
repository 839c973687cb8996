# Docker daemon authorization policy for the host of the compose stack (opa-docker-authz plugin).
#
# The socket proxy (docker-compose.yaml: docker-proxy) filters which API calls the scheduler may
# make, and refuses host-path mounts; it cannot read the rest of a container's HostConfig. The daemon
# can: with this policy, a container that asks for privileges, the host's network, PID, IPC, UTS,
# user or cgroup namespace, added capabilities, host devices, a host path or an unconfined security
# profile is refused, whoever asks (the proxy, a compromised task, a person on the host). GPU jobs
# still get their GPUs (a device request with the "gpu" capability, through the NVIDIA runtime).
#
# Install on the Docker host (see the README, "Running the stack with Docker"):
#   sudo mkdir -p /etc/docker/policies && sudo cp docker/authz/policy.rego /etc/docker/policies/authz.rego
#   docker plugin install --grant-all-permissions --alias opa-docker-authz \
#     openpolicyagent/opa-docker-authz-v2:0.10 opa-args="-policy-file /opa/policies/authz.rego"
#   add "authorization-plugins": ["opa-docker-authz"] to /etc/docker/daemon.json; restart dockerd
# tests/stack/test_docker_api.py evaluates this file (regopy) on the requests the Docker runner sends.
package docker.authz

import rego.v1

default allow := false

allow if count(deny) == 0

body := object.get(input, "Body", {})

host_config := object.get(body, "HostConfig", {}) if is_object(body)

else := {}

creates_container if {
	input.Method == "POST"
	regex.match(`^(/v[0-9.]+)?/containers/create$`, input.PathPlain)
}

non_empty(x) if {
	is_array(x)
	count(x) > 0
}

deny contains "privileged containers are refused" if {
	creates_container
	host_config.Privileged == true
}

deny contains sprintf("%s=%s is refused: it shares a namespace of the host", [mode, host_config[mode]]) if {
	creates_container
	some mode in ["NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"]
	is_string(host_config[mode])
	regex.match(`^host$`, host_config[mode])
}

deny contains "added capabilities are refused" if {
	creates_container
	non_empty(host_config.CapAdd)
}

deny contains "host devices are refused" if {
	creates_container
	non_empty(host_config.Devices)
}

deny contains "device requests other than GPUs are refused" if {
	creates_container
	some request in host_config.DeviceRequests
	request.Capabilities != [["gpu"]]
}

deny contains sprintf("the host path %s is refused", [split(bind, ":")[0]]) if {
	creates_container
	some bind in host_config.Binds
	startswith(bind, "/")
}

deny contains sprintf("a bind mount of %s is refused", [mount.Source]) if {
	creates_container
	some mount in host_config.Mounts
	mount.Type == "bind"
}

deny contains sprintf("the volume %s bound to a host folder is refused", [mount.Source]) if {
	creates_container
	some mount in host_config.Mounts
	mount.Type == "volume"
	contains(object.get(mount, ["VolumeOptions", "DriverConfig", "Options", "o"], ""), "bind")
}

deny contains "volumes from other containers are refused" if {
	creates_container
	non_empty(host_config.VolumesFrom)
}

deny contains sprintf("the security option %s is refused", [option]) if {
	creates_container
	some option in host_config.SecurityOpt
	regex.match(`unconfined|^label[=:]disable$`, option)
}

deny contains "a volume bound to a host folder is refused" if {
	input.Method == "POST"
	regex.match(`^(/v[0-9.]+)?/volumes/create$`, input.PathPlain)
	contains(object.get(body, ["DriverOpts", "o"], ""), "bind")
}

deny contains "exec into containers is refused" if {
	input.Method == "POST"
	regex.match(`^(/v[0-9.]+)?/containers/[^/]+/exec$`, input.PathPlain)
}

deny contains "installing daemon plugins is refused" if {
	input.Method == "POST"
	regex.match(`^(/v[0-9.]+)?/plugins/(pull|create)$`, input.PathPlain)
}
