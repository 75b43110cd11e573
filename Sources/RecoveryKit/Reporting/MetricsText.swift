import Foundation

/// A Prometheus text-format file (node_exporter's textfile collector) as families of samples, so
/// that one run's series can be replaced and every other run's kept (`RunReporter`). The format
/// wants each family's samples together under its one `# HELP` and `# TYPE`.
struct MetricsText {
    struct Family {
        var name: String
        var help: String
        var type = "gauge"
        /// (label text without braces, value), in the order written.
        var samples: [(labels: String, value: String)] = []
    }

    private(set) var families: [Family] = []

    /// Parses what a tool wrote (lines it cannot read are dropped: the file is ours, rewritten whole).
    init(_ text: String) {
        for line in text.split(separator: "\n").map(String.init) {
            if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
                let parts = line.dropFirst(7).split(separator: " ", maxSplits: 1).map(String.init)
                guard let name = parts.first else { continue }
                let index = family(named: name, help: "")
                if line.hasPrefix("# HELP ") { families[index].help = parts.count > 1 ? parts[1] : "" } else { families[index].type = parts.count > 1 ? parts[1] : "gauge" }
                continue
            }
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " ") else { continue }
            let series = line[..<space], value = String(line[line.index(after: space)...])
            let name: String, labels: String
            if let open = series.firstIndex(of: "{"), series.hasSuffix("}") {
                name = String(series[..<open])
                labels = String(series[series.index(after: open)..<series.index(before: series.endIndex)])
            } else {
                name = String(series)
                labels = ""
            }
            families[family(named: name, help: "")].samples.append((labels, value))
        }
    }

    /// The value of `metric`'s sample with exactly `labels`, if there is one.
    /// Labels are compared by their bytes: a database name in NFC and one in NFD are two series.
    func value(of metric: String, labels: String) -> Double? {
        families.first { $0.name == metric }?.samples.first { $0.labels.utf8.elementsEqual(labels.utf8) }.flatMap { Double($0.value) }
    }

    /// Removes the samples whose labels `match` says are being replaced (families left empty go too).
    mutating func remove(where match: (String) -> Bool) {
        for index in families.indices { families[index].samples.removeAll { match($0.labels) } }
        families.removeAll { $0.samples.isEmpty }
    }

    /// Adds one sample (a gauge), its family's HELP taken from this run.
    mutating func add(_ metric: String, help: String, labels: String, value: String) {
        let index = family(named: metric, help: help)
        families[index].help = help
        families[index].samples.append((labels, value))
    }

    /// The file's text: each family's HELP, TYPE and samples.
    var text: String {
        families.flatMap { family in
            ["# HELP \(family.name) \(family.help)", "# TYPE \(family.name) \(family.type)"]
                + family.samples.map { "\(family.name)\($0.labels.isEmpty ? "" : "{\($0.labels)}") \($0.value)" }
        }.joined(separator: "\n") + "\n"
    }

    private mutating func family(named name: String, help: String) -> Int {
        if let index = families.firstIndex(where: { $0.name == name }) { return index }
        families.append(Family(name: name, help: help))
        return families.count - 1
    }
}

/// Takes turns with other runs writing the same metrics file: an exclusive `flock` on its directory
/// (node_exporter reads only `*.prom` there, so no lock file is left beside it). Without a lock (the
/// directory cannot be opened) the write still happens: a lost update beats no metrics.
struct MetricsFileTurn {
    private let descriptor: Int32

    init(_ path: String) {
        let directory = (path as NSString).deletingLastPathComponent
        descriptor = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if descriptor >= 0 {
            while flock(descriptor, LOCK_EX) != 0 && errno == EINTR {}
        }
    }

    func end() {
        if descriptor >= 0 { close(descriptor) }   // closing releases the lock
    }
}
