//! `privmem caps`: the host's KVM capabilities, probed with real ioctls,
//! then a summary in plain words of what they mean for privmem.

mod summary;

use serde_json::{json, Map, Value};

use privmem_core::{Cap, Hypervisor, Vm, VmType};
use privmem_kvm::KvmHypervisor;

use crate::backends::{kvm_blocker, open_kvm};
use summary::{summary, HostFacts};

const TYPES: [VmType; 3] = [VmType::Default, VmType::SwProtected, VmType::Coco];

fn cap_map(probe: impl Fn(Cap) -> Option<u64>) -> Map<String, Value> {
    Cap::ALL
        .iter()
        .map(|&c| {
            (
                c.name().to_string(),
                probe(c).map_or(Value::Null, Value::from),
            )
        })
        .collect()
}

fn gmem_flag_names(v: u64) -> Vec<&'static str> {
    let mut out = Vec::new();
    if v & 1 != 0 {
        out.push("MMAP");
    }
    if v & 2 != 0 {
        out.push("INIT_SHARED");
    }
    out
}

fn vm_type_names(mask: u64) -> Vec<String> {
    let names = ["default", "sw-protected", "sev", "sev-es", "snp", "tdx"];
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            names
                .get(b)
                .map_or_else(|| format!("type{b}"), |s| (*s).to_string())
        })
        .collect()
}

fn kvm_section(kvm: &KvmHypervisor) -> Value {
    let system = cap_map(|c| kvm.check_extension(c).ok());
    let types = kvm.check_extension(Cap::VmTypes).unwrap_or(0);
    let mut per_vm = Map::new();
    for ty in TYPES {
        let entry = match kvm.create_vm(ty) {
            Ok(vm) => Value::Object(cap_map(|c| vm.check_extension(c).ok())),
            Err(e) => json!({ "error": e.to_string() }),
        };
        per_vm.insert(ty.name().to_string(), entry);
    }
    let flags = kvm.check_extension(Cap::GuestMemfdFlags).unwrap_or(0);
    json!({
        "available": true,
        "api_version": kvm.api_version(),
        "system": system,
        "vm_types": format!("{types:#x}"),
        "vm_type_names": vm_type_names(if types == 0 { 1 } else { types }),
        "guest_memfd_flags": { "value": flags, "names": gmem_flag_names(flags) },
        "vm": per_vm,
    })
}

fn runnable(kvm: Option<&KvmHypervisor>) -> Value {
    let kvm_types: Vec<Value> = match kvm {
        Some(k) => TYPES
            .iter()
            .map(|&t| match kvm_blocker(k, t, false) {
                None => json!({ "type": t.name(), "runs": true }),
                Some(why) => json!({ "type": t.name(), "runs": false, "why": why }),
            })
            .collect(),
        None => TYPES
            .iter()
            .map(|t| json!({ "type": t.name(), "runs": false, "why": "/dev/kvm unavailable" }))
            .collect(),
    };
    let model: Vec<Value> = TYPES
        .iter()
        .map(|t| json!({ "type": t.name(), "runs": true }))
        .collect();
    json!({ "kvm": kvm_types, "model": model })
}

/// The facts the summary is made from, as probed.
fn host_facts(kvm: &Result<std::sync::Arc<KvmHypervisor>, String>) -> HostFacts {
    match kvm {
        Ok(k) => HostFacts {
            kvm_unavailable: None,
            vm_types: TYPES
                .iter()
                .map(|&t| (t, kvm_blocker(k, t, false)))
                .collect(),
            guest_memfd: k.check_extension(Cap::GuestMemfd).unwrap_or(0),
            gmem_flags: k.check_extension(Cap::GuestMemfdFlags).unwrap_or(0),
            pvm: k.quirks().pvm,
        },
        Err(why) => HostFacts {
            kvm_unavailable: Some(why.clone()),
            vm_types: Vec::new(),
            guest_memfd: 0,
            gmem_flags: 0,
            pvm: false,
        },
    }
}

pub fn main(json_out: bool) -> i32 {
    let kvm = open_kvm();
    let mut doc = match &kvm {
        Ok(k) => json!({ "kvm": kvm_section(k), "backends": runnable(Some(k)) }),
        Err(why) => {
            json!({ "kvm": { "available": false, "error": why }, "backends": runnable(None) })
        }
    };
    let lines = summary(&host_facts(&kvm));
    if json_out {
        doc["summary"] = Value::from(lines);
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_human(&doc);
        println!("\nsummary:");
        for (i, l) in lines.iter().enumerate() {
            if i > 0 && !l.starts_with(' ') && !lines[i - 1].ends_with(':') {
                println!();
            }
            // Keep each line's own indent on its continuation lines.
            let indent = " ".repeat(2 + l.len() - l.trim_start().len());
            let cont = if l.trim_start().starts_with("- ") {
                format!("{indent}  ")
            } else {
                indent.clone()
            };
            let opts = textwrap::Options::new(96)
                .initial_indent(&indent)
                .subsequent_indent(&cont)
                .word_splitter(textwrap::WordSplitter::NoHyphenation);
            println!("{}", textwrap::fill(l.trim_start(), opts));
        }
    }
    if kvm.is_err() {
        1
    } else {
        0
    }
}

fn print_human(doc: &Value) {
    let k = &doc["kvm"];
    if k["available"] != Value::Bool(true) {
        println!("kvm: unavailable: {}", k["error"].as_str().unwrap_or("?"));
    } else {
        println!("kvm api version {}", k["api_version"]);
        println!(
            "vm types: {} ({})",
            k["vm_types"].as_str().unwrap_or("?"),
            k["vm_type_names"]
        );
        println!(
            "guest_memfd flags: {} {}",
            k["guest_memfd_flags"]["value"], k["guest_memfd_flags"]["names"]
        );
        println!(
            "{:<28} {:>10} per VM type (default / sw-protected / coco)",
            "capability", "system"
        );
        if let Some(sys) = k["system"].as_object() {
            for (name, v) in sys {
                let per: Vec<String> = TYPES
                    .iter()
                    .map(|t| {
                        let e = &k["vm"][t.name()];
                        if e.get("error").is_some() {
                            "-".to_string()
                        } else {
                            e[name].to_string()
                        }
                    })
                    .collect();
                println!("{name:<28} {:>10} {}", v.to_string(), per.join(" / "));
            }
        }
    }
    println!("backends:");
    for backend in ["kvm", "model"] {
        for t in doc["backends"][backend].as_array().into_iter().flatten() {
            let why = t["why"]
                .as_str()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            let runs = if t["runs"] == Value::Bool(true) {
                "runs"
            } else {
                "cannot run"
            };
            println!(
                "  {backend:<5} {runs} {}{why}",
                t["type"].as_str().unwrap_or("?")
            );
        }
    }
}
