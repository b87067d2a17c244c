#!/usr/bin/env python3
"""Builds switchyard.wasm against a copy of the proxy-wasm SDK that counts every hostcall, callback and
memory-allocation call-in, and logs (warn) the counts per request every 2,000 requests (one `on_log` per
request: the gateway's). Nothing in the repository changes: the copy lives in /tmp/pw-count, the build
in /tmp/count-target (Cargo.lock is restored afterwards).

  python3 bench/hostcall_count.py            # -> /tmp/count-target/wasm32-wasip1/release/switchyard.wasm
  BENCH_PORT_OFFSET=37 bench/.peers/venv/bin/python bench/ab.py NAME=/tmp/count-target/.../switchyard.wasm --requests 2000

The totals exclude proxy_log (the counter's own line).
"""
import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDK = "/tmp/pw-count"
src = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/proxy-wasm-0.2.5")))[0]
shutil.rmtree(SDK, ignore_errors=True)
shutil.copytree(src, SDK)
p=SDK + '/src/hostcalls.rs'
s=open(p).read()
names=[]
def repl(m):
    name, params, ret = m.group(1), m.group(2), m.group(3)
    parts=[x.strip() for x in params.split(',') if x.strip()]
    argn=[x.split(':')[0].strip() for x in parts]
    names.append(name)
    idx=len(names)-1
    return (f'#[link(wasm_import_module = "env")]\nextern "C" {{\n    #[link_name = "{name}"]\n    fn __raw_{name}({params}) -> {ret};\n}}\n'
            f'#[allow(clippy::too_many_arguments)]\nunsafe fn {name}({params}) -> {ret} {{ crate::count::hit({idx}); __raw_{name}({", ".join(argn)}) }}\n')
s2=re.sub(r'#\[link\(wasm_import_module = "env"\)\]\s*extern "C" \{\s*fn (proxy_\w+)\(([^;]*?)\)\s*->\s*(\w+);\s*\}', repl, s, flags=re.S)
open(p,'w').write(s2)
d=SDK + '/src/dispatcher.rs'
t=open(d).read()
cbs=[]
def repl2(m):
    cbs.append(m.group(1)); idx=len(cbs)-1
    return m.group(0)+f'\n    crate::count::cb({idx});'
t=re.sub(r'pub extern "C" fn (proxy_on_\w+)\([^{]*?\{', repl2, t, flags=re.S)
open(d,'w').write(t)
a=SDK + '/src/allocator.rs'
u=open(a).read()
u=u.replace('pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {','pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {\n    crate::count::alloc();')
open(a,'w').write(u)
log_idx=cbs.index('proxy_on_log')
cnt=f'''
pub static HOST: &[&str] = &{json.dumps(names)};
pub static CB: &[&str] = &{json.dumps(cbs)};
static mut H: [u64; {len(names)}] = [0; {len(names)}];
static mut C: [u64; {len(cbs)}] = [0; {len(cbs)}];
static mut A: u64 = 0;
static mut LOGS: u64 = 0;
pub fn hit(i: usize) {{ unsafe {{ H[i] += 1; }} }}
pub fn alloc() {{ unsafe {{ A += 1; }} }}
pub fn cb(i: usize) {{
    unsafe {{
        C[i] += 1;
        if i == {log_idx} {{
            LOGS += 1;
            let every: u64 = 2000;
            if LOGS % every == 0 {{
                let req = every as f64; // one on_log per request (the gateway's)
                let mut s = String::from("HOSTCALLS per request:");
                let mut th = 0u64; let mut tc = 0u64;
                for (k, n) in HOST.iter().zip(H.iter()) {{ if *n > 0 && *k != "proxy_log" {{ th += n; s.push_str(&format!(" {{}}={{:.2}}", k, *n as f64 / req)); }} }}
                s.push_str(" | callbacks:");
                for (k, n) in CB.iter().zip(C.iter()) {{ if *n > 0 {{ tc += n; s.push_str(&format!(" {{}}={{:.2}}", k, *n as f64 / req)); }} }}
                s.push_str(&format!(" | alloc={{:.2}} | TOTAL hostcalls={{:.2}} callbacks={{:.2}} allocs={{:.2}}", A as f64 / req, th as f64 / req, tc as f64 / req, A as f64 / req));
                H = [0; {len(names)}]; C = [0; {len(cbs)}]; A = 0;
                let _ = crate::hostcalls::log(crate::types::LogLevel::Warn, &s);
            }}
        }}
    }}
}}
'''
open(SDK + '/src/count.rs','w').write(cnt)
l=open(SDK + '/src/lib.rs').read()
l=l.replace('pub mod hostcalls;','pub mod count;\npub mod hostcalls;',1)
open(SDK + '/src/lib.rs','w').write(l)
lock = (ROOT / "Cargo.lock").read_bytes()
try:
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1", "--lib",
                    "--config", f'patch.crates-io.proxy-wasm.path="{SDK}"'], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": "/tmp/count-target"})
finally:
    (ROOT / "Cargo.lock").write_bytes(lock)
print("/tmp/count-target/wasm32-wasip1/release/switchyard.wasm")
