// The reference CNI plugins every node of the Kubernetes test cluster has in
// /opt/cni/bin before trellis is installed (what kubeadm's kubernetes-cni
// package or kind put there: loopback for the pods' lo, portmap for
// hostPort), built from source at one pinned release. Built by
// scripts/kube-build.sh.
module trellis.test/tools/cni

go 1.24.2

require github.com/containernetworking/plugins v1.9.0

require (
	github.com/alexflint/go-filemutex v1.3.0 // indirect
	github.com/containernetworking/cni v1.3.0 // indirect
	github.com/coreos/go-iptables v0.8.0 // indirect
	github.com/mattn/go-shellwords v1.0.12 // indirect
	github.com/networkplumbing/go-nft v0.4.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/safchain/ethtool v0.6.2 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/sys v0.35.0 // indirect
	sigs.k8s.io/knftables v0.0.18 // indirect
)
