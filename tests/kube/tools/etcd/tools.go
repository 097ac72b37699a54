//go:build tools

// The program scripts/kube-build.sh builds from this module.
package tools

import _ "go.etcd.io/etcd/server/v3"
