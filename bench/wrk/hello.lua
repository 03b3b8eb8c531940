-- The hello-world baseline: GET / as fast as the server answers.
dofile("bench/wrk/summary.lua")
