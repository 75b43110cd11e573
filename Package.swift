// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "dbrecovery",
    // Linux only (Glibc calls throughout, /proc/self/exe, glibc's mallopt); no other
    // platform is built or tested, so none is claimed here.
    products: [
        .executable(name: "dbbackup", targets: ["dbbackup"]),
        .executable(name: "dbrestore", targets: ["dbrestore"]),
        .executable(name: "dbverify", targets: ["dbverify"]),
        .executable(name: "dbmigrate", targets: ["dbmigrate"]),
        .executable(name: "dbprune", targets: ["dbprune"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // libdeflate: the one-member-per-block layout of dumps and base backups (ParallelDeflate), faster than zlib at the same level; WAL segments inflated whole and their CRC-32 (WholeBufferGzip).
        .systemLibrary(name: "CDeflate", pkgConfig: "libdeflate", providers: [.apt(["libdeflate-dev"])]),
        // ISA-L's igzip: WAL segments at its level 1 (WholeBufferGzip.compress), five to nine times as fast as libdeflate's level 1 for about the same size.
        .systemLibrary(name: "CIsal", pkgConfig: "libisal", providers: [.apt(["libisal-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // Typed wrappers of libcurl's variadic calls (curl_easy_setopt, curl_easy_getinfo), which Swift cannot call.
        .target(name: "CCurlShim", dependencies: ["CCurl"]),
        // Signals: a C handler (async-signal-safe: an atomic store and a pipe write) and the Swift
        // cancellation every layer observes; depends on nothing else, so every module may use it.
        .target(name: "CSignalPipe"),
        .target(name: "ProcessSignals", dependencies: ["CSignalPipe"]),
        // The one UTC timestamp formatter (ISO 8601, compact ids, PostgreSQL input); depends on nothing.
        .target(name: "UTCTime"),
        .target(name: "PostgresClient", dependencies: ["CLibPQ", "ProcessSignals", .product(name: "Logging", package: "swift-log")]),
        .target(name: "Gzip", dependencies: ["CZlib", "CDeflate", "CIsal"]),
        .target(name: "BackupStorage", dependencies: ["ProcessSignals", "UTCTime", "CCurlShim", .product(name: "Crypto", package: "swift-crypto"),
                                                      .product(name: "Logging", package: "swift-log")]),
        .target(name: "RecoveryKit", dependencies: [
            "PostgresClient", "Gzip", "BackupStorage", "ProcessSignals", "UTCTime",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "TOMLKit", package: "TOMLKit"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "RecoveryCommands", dependencies: [
            "RecoveryKit", "Gzip", "ProcessSignals",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "dbbackup", dependencies: ["RecoveryCommands"]),
        .executableTarget(name: "dbrestore", dependencies: ["RecoveryCommands"]),
        .executableTarget(name: "dbverify", dependencies: ["RecoveryCommands"]),
        .executableTarget(name: "dbmigrate", dependencies: ["RecoveryCommands"]),
        .executableTarget(name: "dbprune", dependencies: ["RecoveryCommands"]),
        .target(name: "TestSupport", dependencies: ["RecoveryKit"], path: "Tests/TestSupport"),
        .testTarget(name: "GzipTests", dependencies: ["Gzip"]),
        .testTarget(name: "PostgresClientTests", dependencies: ["PostgresClient"]),
        .testTarget(name: "BackupStorageTests", dependencies: ["BackupStorage", "UTCTime"]),
        .testTarget(name: "RecoveryKitTests", dependencies: ["RecoveryKit", "BackupStorage", "ProcessSignals", "Gzip"]),
        .testTarget(name: "RecoveryCommandsTests", dependencies: ["RecoveryCommands", "RecoveryKit",
                                                                  .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                                                  .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "IntegrationTests", dependencies: ["RecoveryKit", "BackupStorage", "TestSupport", "PostgresClient"]),
    ],
    swiftLanguageModes: [.v6]
)
