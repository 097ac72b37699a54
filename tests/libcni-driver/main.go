// libcni-driver: a small command-line client of the real libcni
// (github.com/containernetworking/cni/libcni, as packaged by Debian in
// golang-github-appc-cni-dev), used by trellis' tests and benchmarks so that
// plugins are driven exactly the way container runtimes drive them.
//
// Build (GOPATH mode, no network):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o libcni-driver ./tests/libcni-driver
//
// Usage:
//
//	libcni-driver add|del|check --conflist FILE --container-id ID --netns PATH --ifname NAME
//	              [--cni-path DIR:DIR] [--cache-dir DIR] [--args 'K=V;K2=V2']
//	              [--capability-args JSON] [--cni-version V]
//	libcni-driver gc --conflist FILE [--valid-attachments JSON] [--plugin-gc-only] [...]
//	libcni-driver status --conflist FILE [...]
//	libcni-driver bench --conflist FILE --netns-list FILE --count N [...]
//
// On success the result (ADD) or {} is printed on stdout and the exit status
// is 0. On failure the CNI error {"code","msg","details"} is printed on stdout
// and the exit status is 1; code 0 means the failure did not come from a
// plugin (bad flags, unreadable conflist, plugin not found, ...).
//
// The Debian libcni (1.1.x) predates spec 1.1.0: it has no GC or STATUS and
// cannot parse 1.1.0 results. GC and STATUS are therefore implemented here
// the way libcni 1.2 does it, by invoking each plugin of the list as the spec
// says with invoke.ExecPluginWithoutResult.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

type options struct {
	conflist       string
	containerID    string
	netns          string
	ifname         string
	cniPath        string
	cacheDir       string
	args           string
	capabilityArgs string
	validAtt       string
	cniVersion     string
	netnsList      string
	count          int
	parallel       bool
	pluginGCOnly   bool
	timeout        time.Duration
}

// attachment is one entry of cni.dev/valid-attachments.
type attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// failure is what the driver prints on stdout when an operation fails.
type failure struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: libcni-driver add|del|check|gc|status|bench --conflist FILE [options]"))
	}
	verb := os.Args[1]
	opts, err := parseFlags(verb, os.Args[2:])
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.timeout)
	defer cancel()

	list, err := loadConflist(opts)
	if err != nil {
		fail(err)
	}
	cniConfig := libcni.NewCNIConfigWithCacheDir(cniPaths(opts.cniPath), opts.cacheDir, nil)

	var out interface{} = map[string]interface{}{}
	switch verb {
	case "add":
		rt, err := runtimeConf(opts)
		if err != nil {
			fail(err)
		}
		result, err := cniConfig.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := rememberNetns(opts, list.Name); err != nil {
			fail(err)
		}
		out = result
	case "del":
		rt, err := runtimeConf(opts)
		if err != nil {
			fail(err)
		}
		if err := cniConfig.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
		forgetNetns(opts, list.Name, opts.containerID, opts.ifname)
	case "check":
		rt, err := runtimeConf(opts)
		if err != nil {
			fail(err)
		}
		if err := cniConfig.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "gc":
		if err := gcNetworkList(ctx, cniConfig, opts, list); err != nil {
			fail(err)
		}
	case "status":
		if err := statusNetworkList(ctx, cniConfig, opts, list); err != nil {
			fail(err)
		}
	case "bench":
		timings, err := bench(ctx, cniConfig, opts, list)
		if err != nil {
			fail(err)
		}
		out = timings
	default:
		fail(fmt.Errorf("unknown command %q (want add, del, check, gc, status or bench)", verb))
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func parseFlags(verb string, argv []string) (*options, error) {
	opts := &options{}
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&opts.conflist, "conflist", "", "network configuration list file")
	fs.StringVar(&opts.containerID, "container-id", "", "CNI_CONTAINERID")
	fs.StringVar(&opts.netns, "netns", "", "CNI_NETNS")
	fs.StringVar(&opts.ifname, "ifname", "eth0", "CNI_IFNAME")
	fs.StringVar(&opts.cniPath, "cni-path", os.Getenv("CNI_PATH"), "plugin directories, colon separated")
	fs.StringVar(&opts.cacheDir, "cache-dir", "", "libcni result cache directory (default: libcni's)")
	fs.StringVar(&opts.args, "args", "", "CNI_ARGS, K=V;K2=V2")
	fs.StringVar(&opts.capabilityArgs, "capability-args", "", "capability arguments as a JSON object, e.g. {\"portMappings\":[...]}")
	fs.StringVar(&opts.validAtt, "valid-attachments", "[]", "GC: JSON array of {\"containerID\",\"ifname\"}")
	fs.StringVar(&opts.cniVersion, "cni-version", "", "override the conflist's cniVersion")
	fs.StringVar(&opts.netnsList, "netns-list", "", "bench: file with one netns path per line")
	fs.IntVar(&opts.count, "count", 0, "bench: number of ADDs then DELs")
	fs.BoolVar(&opts.parallel, "parallel", false, "bench: all ADDs at once (a burst), then all DELs at once")
	fs.BoolVar(&opts.pluginGCOnly, "plugin-gc-only", false, "GC: skip the DEL of cached attachments that are not valid, only invoke the plugins' GC")
	fs.DurationVar(&opts.timeout, "timeout", 5*time.Minute, "overall deadline")
	if err := fs.Parse(argv); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if opts.conflist == "" {
		return nil, fmt.Errorf("--conflist is required")
	}
	return opts, nil
}

func loadConflist(opts *options) (*libcni.NetworkConfigList, error) {
	raw, err := ioutil.ReadFile(opts.conflist)
	if err != nil {
		return nil, err
	}
	if opts.cniVersion != "" {
		var doc map[string]interface{}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", opts.conflist, err)
		}
		doc["cniVersion"] = opts.cniVersion
		if raw, err = json.Marshal(doc); err != nil {
			return nil, err
		}
	}
	return libcni.ConfListFromBytes(raw)
}

func cniPaths(path string) []string {
	var dirs []string
	for _, dir := range filepath.SplitList(path) {
		if dir != "" {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

func runtimeConf(opts *options) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{
		ContainerID: opts.containerID,
		NetNS:       opts.netns,
		IfName:      opts.ifname,
	}
	if opts.args != "" {
		for _, pair := range strings.Split(opts.args, ";") {
			if pair == "" {
				continue
			}
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 {
				return nil, fmt.Errorf("--args: %q is not K=V", pair)
			}
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	if opts.capabilityArgs != "" {
		if err := json.Unmarshal([]byte(opts.capabilityArgs), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("--capability-args: %w", err)
		}
	}
	return rt, nil
}

// The Debian libcni does not record the netns in its cache; the driver keeps
// it beside the cache so that GC can DEL stale attachments as libcni 1.2 does.
func netnsRecord(opts *options, network, containerID, ifname string) string {
	if opts.cacheDir == "" {
		return ""
	}
	return filepath.Join(opts.cacheDir, "driver-netns", fmt.Sprintf("%s-%s-%s", network, containerID, ifname))
}

func rememberNetns(opts *options, network string) error {
	path := netnsRecord(opts, network, opts.containerID, opts.ifname)
	if path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return ioutil.WriteFile(path, []byte(opts.netns), 0o600)
}

func forgetNetns(opts *options, network, containerID, ifname string) {
	if path := netnsRecord(opts, network, containerID, ifname); path != "" {
		_ = os.Remove(path)
	}
}

type cachedAttachment struct {
	Kind        string      `json:"kind"`
	ContainerID string      `json:"containerId"`
	Config      []byte      `json:"config"`
	IfName      string      `json:"ifName"`
	NetworkName string      `json:"networkName"`
	CniArgs     [][2]string `json:"cniArgs,omitempty"`
	// CapabilityArgs as cached by libcni.
	CapabilityArgs map[string]interface{} `json:"capabilityArgs,omitempty"`
}

// gcNetworkList follows libcni 1.2's GCNetworkList: DEL every cached
// attachment of this network that is not in the valid list, then, for
// cniVersion >= 1.1.0, invoke GC on every plugin with
// cni.dev/valid-attachments injected. All errors are reported, the first
// plugin error decides the exit code.
func gcNetworkList(ctx context.Context, c *libcni.CNIConfig, opts *options, list *libcni.NetworkConfigList) error {
	var valid []attachment
	if err := json.Unmarshal([]byte(opts.validAtt), &valid); err != nil {
		return fmt.Errorf("--valid-attachments: %w", err)
	}
	isValid := map[attachment]bool{}
	for _, a := range valid {
		isValid[a] = true
	}
	var errs []error
	if !opts.pluginGCOnly && opts.cacheDir != "" {
		files, _ := filepath.Glob(filepath.Join(opts.cacheDir, "results", "*"))
		for _, file := range files {
			raw, err := ioutil.ReadFile(file)
			if err != nil {
				continue
			}
			var cached cachedAttachment
			if json.Unmarshal(raw, &cached) != nil || cached.Kind != libcni.CNICacheV1 || cached.NetworkName != list.Name {
				continue
			}
			if isValid[attachment{cached.ContainerID, cached.IfName}] {
				continue
			}
			netns, _ := ioutil.ReadFile(netnsRecord(opts, list.Name, cached.ContainerID, cached.IfName))
			rt := &libcni.RuntimeConf{
				ContainerID:    cached.ContainerID,
				NetNS:          string(netns),
				IfName:         cached.IfName,
				Args:           cached.CniArgs,
				CapabilityArgs: cached.CapabilityArgs,
			}
			// DEL with the configuration the attachment was added with: the
			// list given for GC may carry a version this libcni cannot use
			// for DEL (1.1.0).
			addedWith, err := libcni.ConfListFromBytes(cached.Config)
			if err != nil {
				errs = append(errs, fmt.Errorf("cached attachment %s/%s: %w", cached.ContainerID, cached.IfName, err))
				continue
			}
			if err := c.DelNetworkList(ctx, addedWith, rt); err != nil {
				errs = append(errs, err)
			} else {
				forgetNetns(opts, list.Name, cached.ContainerID, cached.IfName)
			}
		}
	}
	if atLeast(list.CNIVersion, "1.1.0") {
		if valid == nil {
			valid = []attachment{}
		}
		inject := map[string]interface{}{
			"name":                      list.Name,
			"cniVersion":                list.CNIVersion,
			"cni.dev/valid-attachments": valid,
		}
		for _, plugin := range list.Plugins {
			if err := invokeWithoutResult(ctx, c, opts, "GC", plugin, inject); err != nil {
				errs = append(errs, fmt.Errorf("plugin %s failed (gc): %w", plugin.Network.Type, err))
			}
		}
	}
	if len(errs) == 0 {
		return nil
	}
	for _, err := range errs[1:] {
		fmt.Fprintf(os.Stderr, "libcni-driver: gc: also: %v\n", err)
	}
	return errs[0]
}

// statusNetworkList follows libcni 1.2's GetStatusNetworkList: for
// cniVersion >= 1.1.0, STATUS on each plugin in order, stopping at the first
// error; below 1.1.0 there is nothing to ask.
func statusNetworkList(ctx context.Context, c *libcni.CNIConfig, opts *options, list *libcni.NetworkConfigList) error {
	if !atLeast(list.CNIVersion, "1.1.0") {
		return nil
	}
	inject := map[string]interface{}{"name": list.Name, "cniVersion": list.CNIVersion}
	for _, plugin := range list.Plugins {
		if err := invokeWithoutResult(ctx, c, opts, "STATUS", plugin, inject); err != nil {
			return fmt.Errorf("plugin %s failed (status): %w", plugin.Network.Type, err)
		}
	}
	return nil
}

func invokeWithoutResult(ctx context.Context, c *libcni.CNIConfig, opts *options, command string, plugin *libcni.NetworkConfig, inject map[string]interface{}) error {
	conf, err := libcni.InjectConf(plugin, inject)
	if err != nil {
		return err
	}
	pluginPath, err := invoke.FindInPath(conf.Network.Type, c.Path)
	if err != nil {
		return err
	}
	args := &invoke.Args{
		Command: command,
		Path:    strings.Join(c.Path, string(os.PathListSeparator)),
	}
	return invoke.ExecPluginWithoutResult(ctx, pluginPath, conf.Bytes, args, nil)
}

func atLeast(v, min string) bool {
	ok, err := version.GreaterThanOrEqualTo(v, min)
	return err == nil && ok
}

// benchTimings are per-operation durations in milliseconds; with
// --parallel also the wall time of each burst, the operations that failed
// and the addresses handed out to more than one container.
type benchTimings struct {
	AddMs      []float64 `json:"addMs"`
	DelMs      []float64 `json:"delMs"`
	BurstAddMs float64   `json:"burstAddMs,omitempty"`
	BurstDelMs float64   `json:"burstDelMs,omitempty"`
	Failures   []string  `json:"failures,omitempty"`
	Duplicates []string  `json:"duplicates,omitempty"`
}

// bench runs count ADDs in sequence (container i in the i-th netns of the
// list), then count DELs, timing each libcni call so that the Go process
// start-up is not part of the figures.
func bench(ctx context.Context, c *libcni.CNIConfig, opts *options, list *libcni.NetworkConfigList) (*benchTimings, error) {
	raw, err := ioutil.ReadFile(opts.netnsList)
	if err != nil {
		return nil, fmt.Errorf("--netns-list: %w", err)
	}
	var paths []string
	for _, line := range strings.Split(string(raw), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			paths = append(paths, line)
		}
	}
	if opts.count <= 0 || opts.count > len(paths) {
		return nil, fmt.Errorf("--count %d: must be between 1 and the %d namespaces listed", opts.count, len(paths))
	}
	conf := func(i int) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{
			ContainerID: fmt.Sprintf("bench-%d-%d", os.Getpid(), i),
			NetNS:       paths[i],
			IfName:      opts.ifname,
		}
	}
	timings := &benchTimings{}
	if opts.parallel {
		return burst(ctx, c, list, opts.count, conf), nil
	}
	for i := 0; i < opts.count; i++ {
		start := time.Now()
		if _, err := c.AddNetworkList(ctx, list, conf(i)); err != nil {
			return nil, fmt.Errorf("ADD %d: %w", i, err)
		}
		timings.AddMs = append(timings.AddMs, float64(time.Since(start).Microseconds())/1000)
	}
	for i := 0; i < opts.count; i++ {
		start := time.Now()
		if err := c.DelNetworkList(ctx, list, conf(i)); err != nil {
			return nil, fmt.Errorf("DEL %d: %w", i, err)
		}
		timings.DelMs = append(timings.DelMs, float64(time.Since(start).Microseconds())/1000)
	}
	return timings, nil
}

// burst runs count ADDs at once, as a runtime starting many pods does,
// then count DELs at once; failures are counted, not fatal.
func burst(ctx context.Context, c *libcni.CNIConfig, list *libcni.NetworkConfigList, count int, conf func(int) *libcni.RuntimeConf) *benchTimings {
	timings := &benchTimings{AddMs: make([]float64, count), DelMs: make([]float64, count)}
	var mu sync.Mutex
	owners := map[string]string{}
	run := func(del bool) float64 {
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < count; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				rc := conf(i)
				t0 := time.Now()
				var err error
				if del {
					err = c.DelNetworkList(ctx, list, rc)
				} else {
					var res types.Result
					res, err = c.AddNetworkList(ctx, list, rc)
					if err == nil {
						err = recordAddresses(res, rc.ContainerID, owners, &mu, timings)
					}
				}
				ms := float64(time.Since(t0).Microseconds()) / 1000
				mu.Lock()
				defer mu.Unlock()
				if del {
					timings.DelMs[i] = ms
				} else {
					timings.AddMs[i] = ms
				}
				if err != nil {
					verb := "ADD"
					if del {
						verb = "DEL"
					}
					timings.Failures = append(timings.Failures, fmt.Sprintf("%s %d: %v", verb, i, err))
				}
			}(i)
		}
		wg.Wait()
		return float64(time.Since(start).Microseconds()) / 1000
	}
	timings.BurstAddMs = run(false)
	timings.BurstDelMs = run(true)
	return timings
}

// recordAddresses notes the addresses of an ADD's result, and any already
// held by another container.
func recordAddresses(res types.Result, id string, owners map[string]string, mu *sync.Mutex, t *benchTimings) error {
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ip := range cur.IPs {
		addr := ip.Address.IP.String()
		if other, taken := owners[addr]; taken {
			t.Duplicates = append(t.Duplicates, fmt.Sprintf("%s: %s and %s", addr, other, id))
		}
		owners[addr] = id
	}
	return nil
}

func fail(err error) {
	out := failure{Msg: err.Error()}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out = failure{Code: cniErr.Code, Msg: cniErr.Msg, Details: cniErr.Details}
	}
	fmt.Fprintf(os.Stderr, "libcni-driver: %v\n", err)
	_ = json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(1)
}
