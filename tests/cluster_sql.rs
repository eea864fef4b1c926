//! A real cluster of processes on loopback: `kallista scheduler` and two
//! `kallista executor`s; `kallista sql --scheduler` runs Kallista's functions
//! on it (they must be registered in the client, the scheduler and every
//! executor for this to work).

mod common;

use common::cluster::start_cluster;
use common::kallista;

#[test]
fn sql_with_kallista_functions_on_a_scheduler_and_two_executors() {
    let cluster = start_cluster("sql", 2);
    let query =
        "SELECT kallista_pad(kallista_lookup(kallista_tokenize(q), ['<pad>', '<unk>', 'what', 'is']), 5) AS ids \
                 FROM (VALUES ('What is he doing?'), ('what')) t(q) ORDER BY q";
    let out = kallista(&["sql", "--scheduler", &cluster.url, "-e", query]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("[2, 3, 1, 1, 0]") && stdout.contains("[2, 0, 0, 0, 0]"), "{stdout}");
    // DataFusion's array functions run on the executors too (Ballista's default registry lacks them).
    let query =
        "SELECT SUM(cardinality(kallista_tokenize(q))) AS tokens FROM (VALUES ('What is he doing?'), ('what')) t(q)";
    let out = kallista(&["sql", "--scheduler", &cluster.url, "-e", query]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| 5 "), "{stdout}");
}
