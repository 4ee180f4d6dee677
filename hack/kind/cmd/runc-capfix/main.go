// runc-capfix runs runc after making an OCI spec fit a machine whose capability bounding set lacks
// CAP_SYS_RESOURCE (a Firecracker VM, and any container on it, however privileged).
//
// Without CAP_SYS_RESOURCE runc can neither grant that capability to a container ("unable to apply caps:
// operation not permitted") nor lower a process's oom_score_adj, which the kubelet asks for every pod sandbox
// (-998) and for Guaranteed pods ("can't get final child's PID from pipe: EOF"). So, for `create`/`run` (the
// bundle's config.json) and `exec --process FILE`, this program removes CAP_SYS_RESOURCE from every capability
// set and raises a negative oomScoreAdj to 0, then execs the real runc with the same arguments.
//
// containerd's runc shim runs it in runc's place (the runtime option BinaryName in /etc/containerd/config.toml).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

const realRunc = "/usr/sbin/runc"

// runc's global flags that take a value (`--root DIR` as well as `--root=DIR`).
var globalWithValue = map[string]bool{"--log": true, "--log-format": true, "--root": true, "--criu": true, "--rootless": true}

func main() {
	args := os.Args[1:]
	if file, isProcess := specFile(args); file != "" {
		if err := fix(file, isProcess); err != nil {
			fmt.Fprintf(os.Stderr, "runc-capfix: %s: %v\n", file, err)
			os.Exit(1)
		}
	}
	err := syscall.Exec(realRunc, append([]string{"runc"}, args...), os.Environ())
	fmt.Fprintf(os.Stderr, "runc-capfix: exec %s: %v\n", realRunc, err)
	os.Exit(127)
}

// specFile finds the JSON that runc is about to apply: the bundle's config.json for create/run, the process
// file for exec. isProcess says which of the two layouts it has.
func specFile(args []string) (file string, isProcess bool) {
	i := 0
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		name := strings.SplitN(args[i], "=", 2)[0]
		if globalWithValue[name] && !strings.Contains(args[i], "=") {
			i++
		}
		i++
	}
	if i >= len(args) {
		return "", false
	}
	command, rest := args[i], args[i+1:]
	switch command {
	case "create", "run":
		bundle := flagValue(rest, "--bundle", "-b")
		if bundle == "" {
			bundle = "."
		}
		return filepath.Join(bundle, "config.json"), false
	case "exec":
		return flagValue(rest, "--process", "-p"), true
	}
	return "", false
}

func flagValue(args []string, long, short string) string {
	for i, a := range args {
		for _, name := range []string{long, short} {
			if a == name && i+1 < len(args) {
				return args[i+1]
			}
			if strings.HasPrefix(a, name+"=") {
				return a[len(name)+1:]
			}
		}
		if a == "--" {
			break
		}
	}
	return ""
}

func fix(path string, isProcess bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.UseNumber() // keep every other number exactly as it was written
	var doc map[string]any
	if err := decoder.Decode(&doc); err != nil {
		return err
	}
	process := doc
	if !isProcess {
		p, ok := doc["process"].(map[string]any)
		if !ok {
			return nil
		}
		process = p
	}
	changed := false
	if caps, ok := process["capabilities"].(map[string]any); ok {
		for set, list := range caps {
			names, ok := list.([]any)
			if !ok {
				continue
			}
			kept := names[:0:0]
			for _, n := range names {
				if n != "CAP_SYS_RESOURCE" {
					kept = append(kept, n)
				}
			}
			if len(kept) != len(names) {
				caps[set] = kept
				changed = true
			}
		}
	}
	if adj, ok := process["oomScoreAdj"].(json.Number); ok {
		if v, err := adj.Int64(); err == nil && v < 0 {
			process["oomScoreAdj"] = 0
			changed = true
		}
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".capfix"
	if err := os.WriteFile(tmp, out, info.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
