//! The CPUs an executor runs on (`kallista executor --cpus`). Executors
//! that share a host each get cores of their own, as a container's cpuset
//! would give them: their thread pools, sized by the CPUs a process may
//! use, then add up to the host's cores instead of each taking all of
//! them, and one executor's threads never preempt another's.

/// The CPUs of a list such as `0`, `0-3` or `0,2,4-5`, sorted, each once.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let number = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("'{}' is not a CPU number", s.trim()));
    let mut cpus = vec![];
    for part in list.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if hi < lo {
                    return Err(format!("the range {lo}-{hi} runs backwards"));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Restricts the calling thread, and every thread it starts afterwards, to
/// `cpus`, each of which this process must be allowed to use.
pub fn run_on(cpus: &[usize]) -> Result<(), String> {
    let allowed = allowed_cpus()?;
    if let Some(missing) = cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(format!("CPU {missing} is not one this process may use ({})", describe(&allowed)));
    }
    if cpus.is_empty() {
        return Err("no CPU given".into());
    }
    set_affinity(cpus)
}

/// The CPUs the calling thread may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; the call writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(format!("sched_getaffinity: {}", std::io::Error::last_os_error()));
    }
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Lets the calling thread (and the threads it starts afterwards) run on
/// `cpus` only, unchecked: CPUs beyond the set's size are left out, and
/// the kernel refuses a set it has none of.
pub fn set_affinity(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: as in `allowed_cpus`; `CPU_SET` is given indexes below `CPU_SETSIZE`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(format!("sched_setaffinity: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn describe(cpus: &[usize]) -> String {
    let listed: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    format!("it may use {}", listed.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ranges_and_repeats_parse_to_sorted_cpus() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("4-5,0, 2,5").unwrap(), vec![0, 2, 4, 5]);
        assert!(parse_cpu_list("3-1").unwrap_err().contains("backwards"));
        assert!(parse_cpu_list("0,x").unwrap_err().contains("'x'"));
        assert!(parse_cpu_list("").is_err());
    }

    /// A thread restricted to one CPU sees one core, as thread pools size
    /// themselves; a CPU the process may not use is refused by number.
    #[test]
    fn a_thread_run_on_one_cpu_sees_one_core() {
        let allowed = allowed_cpus().unwrap();
        let first = allowed[0];
        let seen = std::thread::spawn(move || {
            run_on(&[first]).unwrap();
            let inherited = std::thread::spawn(|| std::thread::available_parallelism().unwrap().get()).join().unwrap();
            (allowed_cpus().unwrap(), inherited)
        })
        .join()
        .unwrap();
        assert_eq!(seen, (vec![first], 1));
        let outside = libc::CPU_SETSIZE as usize - 1;
        let refused = std::thread::spawn(move || run_on(&[outside])).join().unwrap().unwrap_err();
        assert!(refused.contains(&format!("CPU {outside}")), "{refused}");
    }
}
