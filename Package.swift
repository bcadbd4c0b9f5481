// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "SwiftDDP",
    products: [
        .executable(name: "ddp", targets: ["ddp"]),
        .library(name: "MPI", targets: ["MPI"]),
        .library(name: "HDF5", targets: ["HDF5"]),
        .library(name: "Kernels", targets: ["Kernels"]),
        .library(name: "Transformer", targets: ["Transformer"]),
        .library(name: "Data", targets: ["Data"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // FilePath: Foundation's NSString path methods trap on one-character relative paths (`--output d`).
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // TensorBoard event files: the protocol buffers are encoded by swift-protobuf (generated code committed).
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // MARK: C libraries (Debian packages; found through pkg-config)
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .systemLibrary(
            name: "CHDF5",
            pkgConfig: "hdf5",
            providers: [.apt(["libhdf5-dev"])]
        ),
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),

        // MARK: Safe Swift layers over the C libraries
        .target(name: "MPI", dependencies: ["Basics", "CMPI"]),
        .target(name: "HDF5", dependencies: ["CHDF5"]),

        // MARK: Files (safe output paths, text from any editor)
        .target(name: "Files", dependencies: [.product(name: "SystemPackage", package: "swift-system")]),

        // MARK: Types the model and the data share (special tokens, the batch, the random number generator)
        .target(name: "Basics"),

        // MARK: Model
        .target(name: "Kernels", dependencies: ["Basics", "CBLAS"]),
        .target(name: "Transformer", dependencies: ["Basics", "Kernels"]),

        // MARK: Data
        .target(name: "Data", dependencies: ["Basics", "HDF5", "Files"]),

        // MARK: Pictures (SVG charts and heatmaps, HTML pages; plain Swift)
        .target(name: "Pictures"),

        // MARK: TensorBoard event files (TFRecord framing around swift-protobuf's encoding)
        .target(name: "TensorBoard", dependencies: ["Files", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                exclude: ["event.proto"]),

        // MARK: Training
        .target(
            name: "Training",
            dependencies: ["Basics", "MPI", "HDF5", "Kernels", "Transformer", "Data", "Files", "TensorBoard",
                           .product(name: "Yams", package: "Yams")]
        ),

        // MARK: Command line
        .executableTarget(
            name: "ddp",
            dependencies: [
                "Basics",
                "MPI",
                "HDF5",
                "Kernels",
                "Transformer",
                "Data",
                "Training",
                "Files",
                "Pictures",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // MARK: Tests
        // Run under real `mpirun` by MPITests: each rank checks exact collective results.
        .executableTarget(
            name: "mpi-checks",
            dependencies: ["MPI"],
            path: "Tests/MPIChecks"
        ),
        // Run under real `mpirun` by TrainingTests: bucketed, overlapped gradient all-reduce.
        .executableTarget(
            name: "training-checks",
            dependencies: ["Basics", "MPI", "Transformer", "Training"],
            path: "Tests/TrainingChecks"
        ),
        // Process running, product lookup and mpirun arguments shared by the tests.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "BasicsTests", dependencies: ["Basics"]),
        .testTarget(name: "CLibraryTests", dependencies: ["CMPI", "CHDF5", "CBLAS"]),
        .testTarget(name: "HDF5Tests", dependencies: ["HDF5", "TestSupport"]),
        .testTarget(name: "MPITests", dependencies: ["MPI", "TestSupport"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "PicturesTests", dependencies: ["Pictures", "TestSupport"]),
        .testTarget(name: "TensorBoardTests", dependencies: ["TensorBoard"]),
        .testTarget(name: "FilesTests", dependencies: ["Files"]),
        .testTarget(name: "DataTests", dependencies: ["Basics", "Data", "HDF5", "TestSupport"]),
        .testTarget(name: "TrainingTests", dependencies: ["Basics", "Training", "Transformer", "Kernels", "Data", "HDF5", "TestSupport"],
                    exclude: ["Fixtures"]),
        .testTarget(name: "TransformerTests", dependencies: ["Basics", "Transformer", "Kernels", "HDF5", "TestSupport"],
                    exclude: ["Fixtures"]),
        .testTarget(name: "ddpTests", dependencies: ["Basics", "Data", "HDF5", "Training", "Transformer", "TestSupport"]),
    ]
)
