"""The fields every forwarding result line of load.py carries (report.py reads
them; tests/test_bench.py checks them).  Kept apart from load.py, which
patches aiortc and aioice when imported."""

FORWARDING_FIELDS = (
    "sfu", "publishers", "subs_per_pub", "subscribers", "seconds",
    "pub_packets_sent", "pub_pps", "pub_payload_kbps_each",
    "fwd_packets", "fwd_by_kind", "fwd_pps",
    "server_cpu_s", "server_cpu_pct", "server_user_pct", "server_sys_pct",
    "server_us_per_fwd_pkt", "server_threads_cpu_pct", "server_rss_kb",
    "loadgen_cpu_pct", "machine_cpu_pct_of_all_cores", "machine_steal_pct_of_all_cores",
    "other_cpu_pct", "ncpu", "loss_pct_vs_fanout", "loss_pct_seq_gaps",
    "worst_sub_recv_over_sent", "server_events", "loadgen_loop_lag_ms",
    "publisher_late_resets", "major_faults", "vm_pages_scanned_for_reclaim", "udp_drops",
    "udp_rx_backlog_bytes", "server_counters",
    "loadgen_mlocked", "loadgen_rx_path", "loadgen_rx_errors", "server_mlocked",
    "calibration", "valid", "invalid_reasons", "started_at", "versions", "setup_s",
)
